//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, with the special tokens
//! of `tokenizer_config.json` / `special_tokens_map.json` read as transformers 5.24 reads them.
//! [`Tokenizer::encode`] never adds special tokens; what transformers' `tokenizer(text)`
//! (`add_special_tokens=True`) adds is probed once at load (see [`Tokenizer::load`]) and the
//! formats add it explicitly, so every sample shows what it holds.

use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<i64>,
    eos: Option<i64>,
    pad: i64,
    /// What transformers' `tokenizer(text)` puts before / after the text's tokens.
    prefix: Vec<i64>,
    suffix: Vec<i64>,
    /// tokenizer_config.json as read, with the special tokens the recipe set.
    config: serde_json::Value,
    /// The same tokenizer reading special-token text as plain text (made on first use).
    plain: std::sync::OnceLock<tokenizers::Tokenizer>,
}

/// The text whose encodings with and without special tokens tell what the post-processor adds.
const PROBE: &str = "a";

/// tokenizer_config.json as read (Null without one), and the special tokens' texts as transformers
/// 5.24 resolves them (`bos_token`, `eos_token`, ... to their text): special_tokens_map.json's entries
/// replace the config's when the config has no `added_tokens_decoder` (transformers reads that file
/// only then); a `LlamaTokenizer(Fast)` / `CodeLlamaTokenizer(Fast)` class defaults to bos `<s>` and
/// eos `</s>`. The tokenizer and the chat templates' `bos_token` / `eos_token` both read them here.
pub fn special_token_texts(
    dir: &Path,
) -> Result<(serde_json::Value, serde_json::Map<String, serde_json::Value>), String> {
    let read = |name: &str| -> Result<serde_json::Value, String> {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display())),
            Err(_) => Ok(serde_json::Value::Null),
        }
    };
    let config = read("tokenizer_config.json")?;
    let map = if config.get("added_tokens_decoder").is_some() {
        serde_json::Value::Null
    } else {
        read("special_tokens_map.json")?
    };
    let llama_like = matches!(tokenizer_class(&config), "LlamaTokenizer" | "CodeLlamaTokenizer");
    // A special token is a string, or {"content": ...} in older files.
    let text = |v: &serde_json::Value| -> Option<String> {
        v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str())).map(str::to_string)
    };
    let mut named = serde_json::Map::new();
    for key in ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"] {
        let class_default = match key {
            "bos_token" if llama_like => Some("<s>"),
            "eos_token" if llama_like => Some("</s>"),
            _ => None,
        };
        let found = map.get(key).and_then(text).or_else(|| config.get(key).and_then(text));
        if let Some(t) = found.or_else(|| class_default.map(str::to_string)) {
            named.insert(key.into(), t.into());
        }
    }
    Ok((config, named))
}

/// tokenizer_config.json's `tokenizer_class` without its `Fast` suffix ("" when absent).
fn tokenizer_class(config: &serde_json::Value) -> &str {
    let class = config.get("tokenizer_class").and_then(|c| c.as_str()).unwrap_or("");
    class.strip_suffix("Fast").unwrap_or(class)
}

impl Tokenizer {
    /// Loads `dir`'s tokenizer as transformers 5.24's `AutoTokenizer.from_pretrained(dir)` sets it up:
    ///
    /// - special tokens (bos/eos/pad/unk): tokenizer_config.json's, overridden by
    ///   special_tokens_map.json's when tokenizer_config.json has no `added_tokens_decoder`
    ///   (transformers reads that file only then, and its entries win); a `LlamaTokenizer(Fast)` /
    ///   `CodeLlamaTokenizer(Fast)` class defaults to bos `<s>` and eos `</s>`;
    /// - what encoding with special tokens adds: tokenizer.json's `post_processor`. transformers
    ///   drops tokenizer_config.json's `add_bos_token` / `add_eos_token` whenever a tokenizer.json
    ///   exists (always, here), so they never decide it. Without a post-processor it builds one from
    ///   the class's own flags: none for the generic class and `LlamaTokenizer` (adds nothing), BOS
    ///   for `CodeLlamaTokenizer`, which also replaces any post-processor with BOS + text.
    pub fn load(dir: &Path) -> Result<Tokenizer, String> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (config, named) = special_token_texts(dir)?;
        let class = tokenizer_class(&config);
        let token = |k: &str| named.get(k).and_then(|t| t.as_str()).and_then(|t| inner.token_to_id(t)).map(i64::from);
        let bos = token("bos_token");
        let eos = token("eos_token");
        let pad = token("pad_token").or(eos).unwrap_or(0);
        let (prefix, suffix) = if class == "CodeLlamaTokenizer" {
            // Its __init__ passes add_bos_token=True, so transformers rebuilds the post-processor.
            (bos.into_iter().collect(), Vec::new())
        } else if inner.get_post_processor().is_none() {
            (Vec::new(), Vec::new())
        } else {
            let ids = |special: bool| -> Result<Vec<i64>, String> {
                let enc = inner.encode(PROBE, special).map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
            };
            let (with, without) = (ids(true)?, ids(false)?);
            let at = (0..=with.len().saturating_sub(without.len()))
                .find(|&i| with[i..].starts_with(&without))
                .ok_or_else(|| format!("{}: the post-processor changes the text's tokens", path.display()))?;
            (with[..at].to_vec(), with[at + without.len()..].to_vec())
        };
        Ok(Tokenizer { inner, bos, eos, pad, prefix, suffix, config, plain: Default::default() })
    }

    /// Sets special tokens and adds new tokens (the recipe's `special_tokens` and `tokens`);
    /// returns how many entries the vocabulary gained. What encoding adds does not change: a new
    /// `bos_token` is `bos_token_id`, but `bos()` stays the post-processor's token, as with
    /// transformers 5 (Axolotl's `update_post_processor()` call there looks for the class name
    /// `LlamaTokenizerFast`, which transformers 5 calls `LlamaTokenizer`).
    pub fn add(
        &mut self,
        special: &crate::config::chat_template::SpecialTokens,
        tokens: &[String],
    ) -> Result<usize, String> {
        self.plain = Default::default(); // rebuilt from the extended vocabulary on next use
        use tokenizers::AddedToken;
        let before = self.inner.get_vocab_size(true);
        let named = [&special.bos_token, &special.eos_token, &special.pad_token, &special.unk_token];
        let specials: Vec<AddedToken> =
            named.iter().filter_map(|t| t.as_ref()).map(|t| AddedToken::from(t.clone(), true)).collect();
        self.inner.add_special_tokens(specials).map_err(|e| format!("special_tokens: {e}"))?;
        let plain: Vec<AddedToken> = tokens.iter().map(|t| AddedToken::from(t.clone(), false)).collect();
        self.inner.add_tokens(plain).map_err(|e| format!("tokens: {e}"))?;
        let id = |t: &Option<String>| t.as_ref().and_then(|t| self.inner.token_to_id(t)).map(i64::from);
        if let Some(b) = id(&special.bos_token) {
            self.bos = Some(b);
        }
        if let Some(e) = id(&special.eos_token) {
            self.eos = Some(e);
        }
        if let Some(p) = id(&special.pad_token) {
            self.pad = p;
        }
        if !self.config.is_object() {
            self.config = serde_json::json!({});
        }
        for (key, value) in [
            ("bos_token", &special.bos_token),
            ("eos_token", &special.eos_token),
            ("pad_token", &special.pad_token),
            ("unk_token", &special.unk_token),
        ] {
            if let (Some(v), Some(o)) = (value, self.config.as_object_mut()) {
                o.insert(key.into(), v.clone().into());
            }
        }
        Ok(self.inner.get_vocab_size(true) - before)
    }

    /// Writes tokenizer.json (with any added tokens) and tokenizer_config.json (with the special
    /// tokens set).
    pub fn save(&self, dir: &std::path::Path) -> Result<(), String> {
        let path = dir.join("tokenizer.json");
        self.inner.save(&path, false).map_err(|e| format!("{}: {e}", path.display()))?;
        let config = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&self.config).map_err(|e| e.to_string())? + "\n";
        std::fs::write(&config, text).map_err(|e| format!("{}: {e}", config.display()))
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let enc = self.inner.encode(text, false).map_err(|e| format!("cannot tokenize: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }

    pub fn decode(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, true).unwrap_or_default()
    }

    /// The text of `ids` with special tokens shown (for previews).
    pub fn decode_with_special(&self, ids: &[i64]) -> String {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, false).unwrap_or_default()
    }

    /// Token ids of `text` as transformers' `tokenizer(text)` gives them (`add_special_tokens=True`):
    /// the text's tokens between what the tokenizer's post-processor puts before and after them
    /// (see [`Tokenizer::load`]).
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<i64>, String> {
        let mut ids = self.prefix.clone();
        ids.extend(self.encode(text)?);
        ids.extend(&self.suffix);
        Ok(ids)
    }

    /// The token `tokenizer(text)` puts before the text (BOS for Llama-style post-processors),
    /// when it puts exactly one; None when it adds nothing before the text.
    pub fn bos(&self) -> Option<i64> {
        match self.prefix[..] {
            [b] => Some(b),
            _ => None,
        }
    }

    /// The BOS token's id whether or not encoding adds it (transformers' `bos_token_id`).
    pub fn bos_token_id(&self) -> Option<i64> {
        self.bos
    }

    /// The EOS token as text (transformers' `eos_token`).
    pub fn eos_text(&self) -> Option<String> {
        self.eos.and_then(|id| self.inner.id_to_token(id as u32))
    }

    /// Whether `tokenizer(text)` ends with the EOS token after the text (the post-processor
    /// appends exactly EOS).
    pub fn adds_eos(&self) -> bool {
        matches!(self.suffix[..], [e] if Some(e) == self.eos)
    }

    pub fn eos(&self) -> Option<i64> {
        self.eos
    }

    pub fn pad(&self) -> i64 {
        self.pad
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// The chat module tokenizes rendered conversations with byte offsets through this.
impl crate::data::chat::ChatEncoder for Tokenizer {
    fn encode_offsets(&self, text: &str, specials_as_text: bool) -> Result<crate::data::chat::Encoded, String> {
        let tok = if specials_as_text {
            self.plain.get_or_init(|| {
                let mut t = self.inner.clone();
                t.set_encode_special_tokens(true);
                t
            })
        } else {
            &self.inner
        };
        let enc = tok.encode(text, false).map_err(|e| format!("cannot tokenize: {e}"))?;
        Ok((enc.get_ids().iter().map(|&i| i64::from(i)).collect(), enc.get_offsets().to_vec()))
    }

    fn token_id(&self, t: &str) -> Option<i64> {
        self.inner.token_to_id(t).map(i64::from)
    }

    fn bos_id(&self) -> Option<i64> {
        self.bos()
    }

    fn eos_id(&self) -> Option<i64> {
        self.eos()
    }
}
