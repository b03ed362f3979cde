//! Axolotl's `chatml.*` / `llama3.*` dataset types for preference training: fixed text templates
//! ("transforms") that write a row's prompt and answers out as strings in ChatML or Llama-3 turns.
//!
//! One name, two meanings, chosen by `rl` as in Axolotl (src/axolotl/utils/data/rl.py): under
//! `rl: kto` Axolotl reads the type from `prompt_strategies/kto/{chatml,llama3}.py` (unpaired rows: a
//! prompt, one answer and a `label`); under `rl: dpo`, `ipo` and `simpo` from
//! `prompt_strategies/dpo/{chatml,llama3}.py` (pairs: a prompt, a chosen and a rejected answer); under
//! `rl: orpo` from `prompt_strategies/orpo`, which has none of them. A dataset entry is parsed
//! without knowing `rl`, so it holds the name only; [`StringTransform::reading`] gives its meaning
//! under a method, and rules.rs refuses a name the method's module does not define.

use super::training::RlMethod;

/// The turn markup a type writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TurnMarkup {
    #[default]
    Chatml,
    Llama3,
}

impl TurnMarkup {
    pub fn as_str(self) -> &'static str {
        match self {
            TurnMarkup::Chatml => "chatml",
            TurnMarkup::Llama3 => "llama3",
        }
    }
}

/// Which fields a type reads (the function name in Axolotl's module). KTO's: `argilla`
/// (instruction), `argilla_chat` (a two-message `completion`), `intel` (question), `prompt_pairs`
/// and `ultra` (prompt), each with the answer in `completion` and a `label`. DPO's: `default`
/// (prompt, else input, else question, else instruction; chosen else chosen_response, rejected else
/// rejected_response), `argilla_chat` (two-message `chosen` / `rejected` lists: the user's and the
/// assistant's), `icr` (input), `intel` (question), `prompt_pairs` (prompt), `ultra` (prompt, and
/// the assistant messages of two-message `chosen` / `rejected` lists). All but `argilla_chat` read
/// an optional `system`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TransformFields {
    #[default]
    Default,
    Argilla,
    ArgillaChat,
    Icr,
    Intel,
    PromptPairs,
    Ultra,
}

impl TransformFields {
    pub fn as_str(self) -> &'static str {
        match self {
            TransformFields::Default => "default",
            TransformFields::Argilla => "argilla",
            TransformFields::ArgillaChat => "argilla_chat",
            TransformFields::Icr => "icr",
            TransformFields::Intel => "intel",
            TransformFields::PromptPairs => "prompt_pairs",
            TransformFields::Ultra => "ultra",
        }
    }
}

/// How a method reads a string-transform row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformReading {
    /// `rl: kto`: a prompt, one answer and a `label` (Axolotl's `prompt_strategies/kto`).
    Unpaired,
    /// `rl: dpo`, `ipo`, `simpo`: a prompt, a chosen and a rejected answer (Axolotl's
    /// `prompt_strategies/dpo`).
    Pairs,
}

impl TransformReading {
    /// The reading `rl` gives these types; None where Axolotl's module for `rl` has none of them
    /// (`orpo`).
    pub fn of(rl: RlMethod) -> Option<TransformReading> {
        match rl {
            RlMethod::Kto => Some(TransformReading::Unpaired),
            RlMethod::Dpo | RlMethod::Ipo | RlMethod::Simpo => Some(TransformReading::Pairs),
            RlMethod::Orpo => None,
        }
    }

    /// Axolotl's module for this reading (`chatml` / `llama3` filled in by the caller).
    pub fn module(self) -> &'static str {
        match self {
            TransformReading::Unpaired => "prompt_strategies/kto",
            TransformReading::Pairs => "prompt_strategies/dpo",
        }
    }

    /// The methods that read this way.
    pub fn methods(self) -> &'static str {
        match self {
            TransformReading::Unpaired => "rl: kto",
            TransformReading::Pairs => "rl: dpo, ipo or simpo",
        }
    }
}

/// One `chatml.*` / `llama3.*` type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StringTransform {
    pub markup: TurnMarkup,
    pub fields: TransformFields,
}

/// The field styles Axolotl defines for unpaired rows (kto/chatml.py, kto/llama3.py).
const UNPAIRED: &[TransformFields] = &[
    TransformFields::Argilla,
    TransformFields::ArgillaChat,
    TransformFields::Intel,
    TransformFields::PromptPairs,
    TransformFields::Ultra,
];

/// The field styles Axolotl defines for pairs (dpo/chatml.py, dpo/llama3.py).
const PAIRS: &[TransformFields] = &[
    TransformFields::Default,
    TransformFields::ArgillaChat,
    TransformFields::Icr,
    TransformFields::Intel,
    TransformFields::PromptPairs,
    TransformFields::Ultra,
];

/// Every type name, in schema order, with what its rows hold.
pub const STRING_TRANSFORM_TYPES: &[(&str, TurnMarkup, TransformFields, &str)] = &[
    ("chatml.argilla", TurnMarkup::Chatml, TransformFields::Argilla, "kto: system?, instruction, completion, label"),
    (
        "chatml.argilla_chat",
        TurnMarkup::Chatml,
        TransformFields::ArgillaChat,
        "kto: completion (user and assistant messages), label; dpo: chosen and rejected (user and assistant messages)",
    ),
    (
        "chatml.default",
        TurnMarkup::Chatml,
        TransformFields::Default,
        "dpo: system?, prompt|input|question|instruction, chosen|chosen_response, rejected|rejected_response",
    ),
    ("chatml.icr", TurnMarkup::Chatml, TransformFields::Icr, "dpo: system?, input, chosen, rejected"),
    (
        "chatml.intel",
        TurnMarkup::Chatml,
        TransformFields::Intel,
        "kto: system?, question, completion, label; dpo: system?, question, chosen, rejected",
    ),
    (
        "chatml.prompt_pairs",
        TurnMarkup::Chatml,
        TransformFields::PromptPairs,
        "kto: system?, prompt, completion, label; dpo: system?, prompt, chosen, rejected",
    ),
    (
        "chatml.ultra",
        TurnMarkup::Chatml,
        TransformFields::Ultra,
        "kto: system?, prompt, completion, label; dpo: system?, prompt, chosen and rejected (user and assistant messages)",
    ),
    ("llama3.argilla", TurnMarkup::Llama3, TransformFields::Argilla, "kto: system?, instruction, completion, label"),
    (
        "llama3.argilla_chat",
        TurnMarkup::Llama3,
        TransformFields::ArgillaChat,
        "kto: completion (user and assistant messages), label; dpo: chosen and rejected (user and assistant messages)",
    ),
    (
        "llama3.default",
        TurnMarkup::Llama3,
        TransformFields::Default,
        "dpo: system?, prompt|input|question|instruction, chosen|chosen_response, rejected|rejected_response",
    ),
    ("llama3.icr", TurnMarkup::Llama3, TransformFields::Icr, "dpo: system?, input, chosen, rejected"),
    (
        "llama3.intel",
        TurnMarkup::Llama3,
        TransformFields::Intel,
        "kto: system?, question, completion, label; dpo: system?, question, chosen, rejected",
    ),
    (
        "llama3.prompt_pairs",
        TurnMarkup::Llama3,
        TransformFields::PromptPairs,
        "kto: system?, prompt, completion, label; dpo: system?, prompt, chosen, rejected",
    ),
    (
        "llama3.ultra",
        TurnMarkup::Llama3,
        TransformFields::Ultra,
        "kto: system?, prompt, completion, label; dpo: system?, prompt, chosen and rejected (user and assistant messages)",
    ),
];

impl StringTransform {
    pub fn from_type(name: &str) -> Option<StringTransform> {
        STRING_TRANSFORM_TYPES
            .iter()
            .find(|(n, ..)| *n == name)
            .map(|&(_, markup, fields, _)| StringTransform { markup, fields })
    }

    pub fn type_name(self) -> &'static str {
        STRING_TRANSFORM_TYPES
            .iter()
            .find(|(_, m, f, _)| (*m, *f) == (self.markup, self.fields))
            .map_or("chatml.default", |(n, ..)| n)
    }

    /// Whether Axolotl's module for `reading` defines this type.
    pub fn defined_for(self, reading: TransformReading) -> bool {
        match reading {
            TransformReading::Unpaired => UNPAIRED.contains(&self.fields),
            TransformReading::Pairs => PAIRS.contains(&self.fields),
        }
    }

    /// The type names Axolotl's module for `reading` defines in this markup.
    pub fn names_for(markup: TurnMarkup, reading: TransformReading) -> Vec<&'static str> {
        STRING_TRANSFORM_TYPES
            .iter()
            .filter(|(_, m, f, _)| *m == markup && StringTransform { markup: *m, fields: *f }.defined_for(reading))
            .map(|(n, ..)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_and_belongs_to_a_module() {
        for &(name, ..) in STRING_TRANSFORM_TYPES {
            let t = StringTransform::from_type(name).unwrap();
            assert_eq!(t.type_name(), name);
            assert!(t.defined_for(TransformReading::Unpaired) || t.defined_for(TransformReading::Pairs), "{name}");
        }
        assert_eq!(StringTransform::names_for(TurnMarkup::Chatml, TransformReading::Unpaired).len(), 5);
        assert_eq!(StringTransform::names_for(TurnMarkup::Llama3, TransformReading::Pairs).len(), 6);
        assert!(!StringTransform::from_type("chatml.argilla").unwrap().defined_for(TransformReading::Pairs));
        assert!(!StringTransform::from_type("llama3.icr").unwrap().defined_for(TransformReading::Unpaired));
    }
}
