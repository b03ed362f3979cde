//! `unfrozen_parameters`: a full fine-tune that trains only the parameters whose names match
//! (Axolotl's `freeze_layers_except`, the list Spectrum writes). This module owns the key and
//! the syntax of its patterns, exactly as Axolotl reads them: a regular expression matched at
//! the start of a parameter's Hugging Face name (`model.layers.3.mlp.down_proj.weight`), every
//! `.` not followed by `+` taken literally, and an optional trailing `[start:end]` (or `[i]`,
//! `[start:]`, `[:end]`) that trains only those rows (the first dimension) of what matches.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which parameters a full fine-tune trains.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UnfrozenConfig {
    /// Full fine-tuning of only these parameters, as Axolotl's `unfrozen_parameters` (Spectrum's
    /// output): each entry is a regular expression matched at the start of a parameter's Hugging
    /// Face name (`^model.layers.1[0-5].mlp.*`, `lm_head`), a `.` meaning a literal dot unless
    /// followed by `+`; a trailing `[start:end]` trains only those rows (e.g.
    /// `^model.embed_tokens.weight$[32000:]` for new tokens' embeddings). Everything else stays
    /// frozen. Needs a full fine-tune (no `adapter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfrozen_parameters: Option<Vec<String>>,
    /// LISA (Axolotl's `LISACallback`): a full fine-tune in which only this many decoder layers,
    /// drawn at random, train at a time; the embeddings, final norm and head train throughout. Set
    /// with `lisa_step_interval`. The layers are drawn at step 0, again at step 1 (Axolotl's
    /// condition), then every `lisa_step_interval` steps, from recipe's own generator seeded by
    /// `seed` (the distribution of Axolotl's numpy draw, not its numbers). Needs a full
    /// fine-tune, 32-bit torch AdamW or bitsandbytes' 8-bit AdamW, and no fsdp / DeepSpeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lisa_n_layers: Option<u32>,
    /// LISA: draw new layers every this many optimizer steps (and at step 1). Set with
    /// `lisa_n_layers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub lisa_step_interval: Option<u32>,
    /// LISA: where the decoder layers are (Axolotl's attribute path); only `model.layers`, the
    /// Llama family's, is built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lisa_layers_attribute: Option<String>,
}

/// Rows `start..end` of a parameter (`end` None: to the last row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RowRange {
    pub start: u64,
    pub end: Option<u64>,
}

/// One entry of `unfrozen_parameters`, parsed.
#[derive(Debug, Clone)]
pub struct UnfreezePattern {
    /// The entry as written.
    pub raw: String,
    regex: regex::Regex,
    pub rows: Option<RowRange>,
}

impl UnfreezePattern {
    /// Parses an entry as Axolotl's `LayerNamePattern` does; the error says what is wrong with it.
    pub fn parse(raw: &str) -> Result<UnfreezePattern, String> {
        let (name, rows) = split_range(raw)?;
        // Axolotl: re.sub(r"\.(?!\+)", r"\.", name), then re.match (anchored at the start only).
        let mut escaped = String::with_capacity(name.len() + 8);
        let chars: Vec<char> = name.chars().collect();
        for (i, &ch) in chars.iter().enumerate() {
            if ch == '.' && chars.get(i + 1) != Some(&'+') {
                escaped.push_str("\\.");
            } else {
                escaped.push(ch);
            }
        }
        let regex = regex::Regex::new(&format!("^(?:{escaped})"))
            .map_err(|e| format!("`{raw}` is not a regular expression recipe can read: {e}"))?;
        Ok(UnfreezePattern { raw: raw.to_string(), regex, rows })
    }

    pub fn matches(&self, parameter: &str) -> bool {
        self.regex.is_match(parameter)
    }
}

/// Splits a trailing `[start:end]` / `[i]` off a pattern (Axolotl's `_parse_pattern`).
fn split_range(raw: &str) -> Result<(&str, Option<RowRange>), String> {
    let Some(body) = raw.strip_suffix(']') else { return Ok((raw, None)) };
    let Some(open) = body.rfind('[') else { return Ok((raw, None)) };
    let (name, inside) = (&body[..open], &body[open + 1..]);
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let (start, end) = match inside.split_once(':') {
        Some((s, e)) if digits(s) && digits(e) => (s, Some(e)),
        None if digits(inside) => (inside, None),
        // Not a range (a regex character class such as `[0-9]`): the whole entry is the pattern.
        _ => return Ok((raw, None)),
    };
    if name.is_empty() {
        return Ok((raw, None));
    }
    let number = |s: &str| s.parse::<u64>().map_err(|_| format!("`{raw}`: `{s}` is not a row index"));
    let rows = match end {
        // `[]`: every row, as Axolotl reads it.
        None if start.is_empty() => RowRange { start: 0, end: None },
        None => {
            let i = number(start)?;
            RowRange { start: i, end: Some(i + 1) }
        }
        Some(e) => {
            let start = if start.is_empty() { 0 } else { number(start)? };
            let end = if e.is_empty() { None } else { Some(number(e)?) };
            if let Some(end) = end
                && start >= end
            {
                return Err(format!("`{raw}`: the row range's end must be greater than its start"));
            }
            RowRange { start, end }
        }
    };
    Ok((name, Some(rows)))
}

/// Every entry parsed; the first bad one's index and message.
pub fn parse_all(patterns: &[String]) -> Result<Vec<UnfreezePattern>, (usize, String)> {
    patterns.iter().enumerate().map(|(i, p)| UnfreezePattern::parse(p).map_err(|e| (i, e))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_literal_and_matching_is_anchored_at_the_start_only() {
        let p = UnfreezePattern::parse("model.layers.1[0-5].mlp.*").unwrap();
        assert!(p.matches("model.layers.12.mlp.down_proj.weight"));
        assert!(!p.matches("model.layers.1.mlp.down_proj.weight"));
        assert!(!p.matches("xmodel.layers.12.mlp.down_proj.weight"));
        // `.` is a literal dot: `model_layers` does not match `model.layers`.
        assert!(!UnfreezePattern::parse("model.layers").unwrap().matches("model_layers.0"));
        // `.+` stays a wildcard.
        assert!(UnfreezePattern::parse("model.+down_proj").unwrap().matches("model.layers.0.mlp.down_proj.weight"));
        assert!(UnfreezePattern::parse("lm_head").unwrap().matches("lm_head.weight"));
        assert!(!UnfreezePattern::parse("^lm_head$").unwrap().matches("lm_head.weight"));
    }

    #[test]
    fn row_ranges_follow_axolotl() {
        let rows = |s: &str| UnfreezePattern::parse(s).unwrap().rows;
        assert_eq!(rows("^model.embed_tokens.weight$[:32000]"), Some(RowRange { start: 0, end: Some(32000) }));
        assert_eq!(rows("embed_tokens.weight[32000:]"), Some(RowRange { start: 32000, end: None }));
        assert_eq!(rows("embed_tokens.weight[7]"), Some(RowRange { start: 7, end: Some(8) }));
        assert_eq!(rows("layers.[0-9]"), None);
        assert!(UnfreezePattern::parse("embed_tokens.weight[9:3]").unwrap_err().contains("greater than its start"));
        assert!(UnfreezePattern::parse("model.(layers").unwrap_err().contains("not a regular expression"));
    }
}
