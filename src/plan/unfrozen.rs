//! `unfrozen_parameters` resolved against the architecture: the Hugging Face parameters each
//! pattern trains (as transformers' `named_parameters()` lists them: a tied head once, under
//! `model.embed_tokens.weight`), and the trainable count of the partial full fine-tune.

use super::arch::Architecture;
use crate::config::Config;
use crate::config::unfrozen::{RowRange, UnfreezePattern, parse_all};
use serde::Serialize;

/// The parameters a partial full fine-tune trains.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnfrozenPlan {
    pub patterns: Vec<UnfrozenPatternPlan>,
    /// Values of the trained tensors (whole tensors: a row range still carries gradients and
    /// optimizer state for every row, zeroed outside it).
    pub trainable_parameters: u64,
    /// Trained values in decoder layer i (the rest of `trainable_parameters` is in the root unit).
    #[serde(skip)]
    pub per_layer: Vec<u64>,
}

/// One entry of `unfrozen_parameters` and what it matched.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnfrozenPatternPlan {
    pub pattern: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<RowRange>,
    /// Matched parameters, by Hugging Face name.
    pub tensors: Vec<String>,
}

/// A parameter of the model: its name, rows (first dimension) and number of values.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedParameter {
    pub name: String,
    pub rows: u64,
    pub numel: u64,
}

/// Every parameter of a dense model (the Llama family, Gemma, Phi-3, OLMo 2) by transformers'
/// name; `score_head`: a reward model's one-output `score` in place of `lm_head`. A mixture of
/// experts' blocks are not listed (`plan` refuses it by the count).
pub fn named_parameters(arch: &Architecture, score_head: bool) -> Vec<NamedParameter> {
    let (h, v) = (arch.hidden_size, arch.vocab_size);
    let mut out = vec![NamedParameter { name: "model.embed_tokens.weight".into(), rows: v, numel: v * h }];
    for l in 0..arch.num_layers {
        let p = format!("model.layers.{l}");
        for lin in arch.layer_linears() {
            out.push(NamedParameter {
                name: format!("{p}.{}.weight", lin.name),
                rows: lin.out_features,
                numel: lin.out_features * lin.in_features,
            });
            if lin.bias {
                out.push(NamedParameter {
                    name: format!("{p}.{}.bias", lin.name),
                    rows: lin.out_features,
                    numel: lin.out_features,
                });
            }
        }
        if arch.qk_norm {
            // Per head ([head_dim]), or over all heads of q and of k (OLMo 2).
            let (q, k) = if arch.qk_norm_all_heads {
                (arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim)
            } else {
                (arch.head_dim, arch.head_dim)
            };
            for (norm, d) in [("q_norm", q), ("k_norm", k)] {
                out.push(NamedParameter { name: format!("{p}.self_attn.{norm}.weight"), rows: d, numel: d });
            }
        }
        let mut norms = vec!["post_attention_layernorm"];
        if !arch.post_norms {
            norms.push("input_layernorm");
        }
        if arch.post_norms || arch.gemma.is_some() {
            norms.push("post_feedforward_layernorm");
        }
        if arch.gemma.is_some() {
            norms.push("pre_feedforward_layernorm");
        }
        for norm in norms {
            out.push(NamedParameter { name: format!("{p}.{norm}.weight"), rows: h, numel: h });
        }
    }
    out.push(NamedParameter { name: "model.norm.weight".into(), rows: h, numel: h });
    if score_head {
        out.push(NamedParameter { name: "score.weight".into(), rows: 1, numel: h });
    } else if !arch.tie_word_embeddings {
        out.push(NamedParameter { name: "lm_head.weight".into(), rows: v, numel: v * h });
    }
    out
}

/// Resolves the recipe's `unfrozen_parameters` (None when absent). `total`: the model's parameter
/// count, which the listed parameters must add up to (an architecture whose tensors this module
/// does not list is refused rather than half-matched).
pub fn plan(c: &Config, arch: &Architecture, total: u64) -> Result<Option<UnfrozenPlan>, String> {
    let Some(raw) = &c.unfrozen.unfrozen_parameters else { return Ok(None) };
    let patterns = parse_all(raw).map_err(|(i, e)| format!("`unfrozen_parameters[{i}]`: {e}"))?;
    let params = named_parameters(arch, c.training.reward_model);
    let listed: u64 = params.iter().map(|p| p.numel).sum();
    if listed != total {
        return Err(format!(
            "`unfrozen_parameters` is not built for {} yet (recipe lists {} of its {} parameters by name)",
            arch.class,
            super::group(listed),
            super::group(total)
        ));
    }
    let mut trained = vec![false; params.len()];
    let mut out = Vec::new();
    for pattern in &patterns {
        let tensors: Vec<&NamedParameter> = params.iter().filter(|p| pattern.matches(&p.name)).collect();
        if tensors.is_empty() {
            return Err(no_match(pattern, arch, &params));
        }
        if let Some(RowRange { end: Some(end), .. }) = pattern.rows
            && let Some(short) = tensors.iter().find(|p| p.rows < end)
        {
            return Err(format!(
                "`unfrozen_parameters`: `{}` asks for rows up to {end}, but {} has {} rows",
                pattern.raw, short.name, short.rows
            ));
        }
        for p in &tensors {
            if let Some(i) = params.iter().position(|q| q.name == p.name) {
                trained[i] = true;
            }
        }
        out.push(UnfrozenPatternPlan {
            pattern: pattern.raw.clone(),
            rows: pattern.rows,
            tensors: tensors.iter().map(|p| p.name.clone()).collect(),
        });
    }
    let trainable_parameters = params.iter().zip(&trained).filter(|(_, t)| **t).map(|(p, _)| p.numel).sum();
    let per_layer = (0..arch.num_layers)
        .map(|l| {
            let prefix = format!("model.layers.{l}.");
            params.iter().zip(&trained).filter(|(p, t)| **t && p.name.starts_with(&prefix)).map(|(p, _)| p.numel).sum()
        })
        .collect();
    Ok(Some(UnfrozenPlan { patterns: out, trainable_parameters, per_layer }))
}

fn no_match(pattern: &UnfreezePattern, arch: &Architecture, params: &[NamedParameter]) -> String {
    let tied = if arch.tie_word_embeddings && pattern.raw.contains("lm_head") {
        " (its head is tied: transformers lists it once, as model.embed_tokens.weight)"
    } else {
        ""
    };
    let examples: Vec<&str> = params.iter().take(4).map(|p| p.name.as_str()).collect();
    format!(
        "`unfrozen_parameters`: `{}` matches no parameter of {}{tied}; patterns match the start of names such as {}",
        pattern.raw,
        arch.class,
        examples.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dense_builtin_model_lists_all_its_parameters_by_name() {
        let mut checked = 0;
        for (id, _) in crate::plan::model::BUILTIN_MODELS {
            let arch = crate::plan::model::builtin_architecture(id).unwrap();
            if arch.moe.is_some() {
                continue;
            }
            let params = named_parameters(&arch, false);
            let listed: u64 = params.iter().map(|p| p.numel).sum();
            assert_eq!(listed, arch.parameter_counts().total, "{id}");
            let mut names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), params.len(), "{id}: a name listed twice");
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} dense built-in models");
    }
}
