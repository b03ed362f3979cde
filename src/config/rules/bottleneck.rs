//! The rules of `adapter: bottleneck` (AdapterHub's bottleneck adapters): its keys act only with
//! it, it reads no other method's key, its activation is one the executor builds (adapters' other
//! activations refused by name), and what it does not build (a trained reward head, new tokens,
//! sharded training) is refused at the key.

use super::super::Config;
use super::super::adapter::AdapterKind;
use super::Rules;

/// The keys only `adapter: bottleneck` reads.
pub(super) const BOTTLENECK_KEYS: &[&str] = &["adapter_config", "adapter_reduction_factor", "adapter_non_linearity"];

/// The activations the executor builds (model/bottleneck.rs), by adapters' names.
pub const NON_LINEARITIES: &[&str] = &["relu", "swish", "silu", "gelu", "gelu_new", "tanh"];

/// adapters' other accepted names (transformers' ACT2FN keys and adapters' own `leakyrelu`), refused by name.
const NOT_BUILT_NON_LINEARITIES: &[&str] = &[
    "gelu_10",
    "gelu_fast",
    "gelu_python",
    "gelu_pytorch_tanh",
    "gelu_python_tanh",
    "gelu_accurate",
    "laplace",
    "leaky_relu",
    "leakyrelu",
    "linear",
    "mish",
    "quick_gelu",
    "relu2",
    "relu6",
    "sigmoid",
    "prelu",
    "xielu",
];

impl Rules<'_> {
    pub(super) fn bottleneck_keys(&mut self, c: &Config) {
        let a = &c.adapter;
        if a.adapter != Some(AdapterKind::Bottleneck) {
            for key in BOTTLENECK_KEYS.iter().filter(|k| self.at.entry(k).is_some()) {
                self.error(
                    "bottleneck-key-without-bottleneck",
                    match a.adapter {
                        Some(kind) => format!(
                            "`{key}` is a bottleneck-adapter key, but `adapter: {}` is not `bottleneck`",
                            kind.as_str()
                        ),
                        None => format!("`{key}` is a bottleneck-adapter key, but there is no `adapter`"),
                    },
                    &[key, "adapter"],
                    "set adapter: bottleneck, or remove it",
                );
            }
            return;
        }
        // Every other key of the adapter section belongs to another method (prompt and prefix
        // tuning's are reported by prompt_tuning_keys).
        for key in &self.written_adapter_keys(&[BOTTLENECK_KEYS, super::VIRTUAL_TOKEN_KEYS]) {
            let owner = if key.starts_with("ia3_") { "an IA3 key" } else { "a LoRA key" };
            self.error(
                "lora-key-with-bottleneck",
                format!("`{key}` is {owner}, and `adapter: bottleneck` does not use it"),
                &[key, "adapter"],
                "remove it (bottleneck adapters take adapter_config, adapter_reduction_factor and \
                 adapter_non_linearity), or use the method it belongs to",
            );
        }
        if let Some(name) = &a.adapter_non_linearity {
            let lower = name.to_lowercase();
            if NOT_BUILT_NON_LINEARITIES.contains(&lower.as_str()) {
                self.error(
                    "unsupported-adapter-non-linearity",
                    format!("`adapter_non_linearity: {name}` is one of adapters' activations, but not built here"),
                    &["adapter_non_linearity"],
                    &format!("use one of {}", NON_LINEARITIES.join(", ")),
                );
            } else if !NON_LINEARITIES.contains(&lower.as_str()) {
                let near = crate::recipe::diagnostic::did_you_mean(&lower, NON_LINEARITIES.iter().copied());
                self.error(
                    "adapter-non-linearity-unknown",
                    format!("`adapter_non_linearity: {name}` is not an activation adapters knows"),
                    &["adapter_non_linearity"],
                    &match near {
                        Some(n) => format!("did you mean `{n}`? (built: {})", NON_LINEARITIES.join(", ")),
                        None => format!("use one of {}", NON_LINEARITIES.join(", ")),
                    },
                );
            }
        }
        if let Some(rf) = a.adapter_reduction_factor
            && !(rf.is_finite() && rf > 0.0)
        {
            self.error(
                "adapter-reduction-factor",
                format!("`adapter_reduction_factor: {rf}` must be a positive number"),
                &["adapter_reduction_factor"],
                "16 is adapters' default (the bottleneck is hidden_size / 16 wide)",
            );
        }
        let refuse = |rules: &mut Self, key: &str, why: &str, help: &str| {
            rules.error(
                "unsupported-bottleneck",
                format!("`{key}` with `adapter: bottleneck`: {why}"),
                &[key, "adapter"],
                help,
            );
        };
        if c.training.reward_model {
            refuse(self, "reward_model", "a reward model with it is not built", "train with adapter: lora");
        }
        if !c.chat.tokens.is_empty() {
            refuse(
                self,
                "tokens",
                "new tokens need trained embedding and head rows, and bottleneck adapters train only their blocks",
                "remove tokens, or use adapter: lora (it trains embed_tokens and lm_head with them)",
            );
        }
        for key in ["fsdp", "fsdp_config", "deepspeed"] {
            if self.at.entry(key).is_some() {
                refuse(
                    self,
                    key,
                    "sharded training of bottleneck adapters is not built",
                    "remove it: the adapters are small, plain data parallelism (several processes) trains them",
                );
            }
        }
    }
}
