//! The model's tokenizer: `tokenizer.json` through the `tokenizers` crate, with the special tokens
//! and `add_bos_token` / `add_eos_token` of `tokenizer_config.json`. Encoding never adds special
//! tokens by itself; the formats add BOS/EOS explicitly, so every sample shows what it holds.

use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<i64>,
    eos: Option<i64>,
    pad: i64,
    add_bos: bool,
    /// tokenizer_config.json as read, with the special tokens the recipe set.
    config: serde_json::Value,
    /// The same tokenizer reading special-token text as plain text (made on first use).
    plain: std::sync::OnceLock<tokenizers::Tokenizer>,
}

impl Tokenizer {
    pub fn load(dir: &Path) -> Result<Tokenizer, String> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| format!("{}: {e}", config_path.display()))?,
            Err(_) => serde_json::Value::Null,
        };
        // A special token is a string, or {"content": ...} in older tokenizer_config.json files.
        let token = |k: &str| -> Option<i64> {
            let v = config.get(k)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text).map(i64::from)
        };
        let bos = token("bos_token");
        let eos = token("eos_token");
        let pad = token("pad_token").or(eos).unwrap_or(0);
        // transformers' default for Llama tokenizers is to add BOS.
        let add_bos = config.get("add_bos_token").and_then(|v| v.as_bool()).unwrap_or(bos.is_some());
        Ok(Tokenizer { inner, bos, eos, pad, add_bos, config, plain: Default::default() })
    }

    /// Sets special tokens and adds new tokens (the recipe's `special_tokens` and `tokens`);
    /// returns how many entries the vocabulary gained.
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
    /// BOS when the tokenizer adds one, EOS when it appends one (`add_eos_token`).
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<i64>, String> {
        let mut ids: Vec<i64> = self.bos().into_iter().collect();
        ids.extend(self.encode(text)?);
        ids.extend(self.eos.filter(|_| self.adds_eos()));
        Ok(ids)
    }

    /// BOS when the tokenizer adds one.
    pub fn bos(&self) -> Option<i64> {
        self.bos.filter(|_| self.add_bos)
    }

    /// The BOS token's id whether or not encoding adds it (transformers' `bos_token_id`).
    pub fn bos_token_id(&self) -> Option<i64> {
        self.bos
    }

    /// The EOS token as text (transformers' `eos_token`).
    pub fn eos_text(&self) -> Option<String> {
        self.eos.and_then(|id| self.inner.id_to_token(id as u32))
    }

    /// Whether transformers' `add_special_tokens=True` appends EOS (`add_eos_token`).
    pub fn adds_eos(&self) -> bool {
        self.config.get("add_eos_token").and_then(|v| v.as_bool()).unwrap_or(false)
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
