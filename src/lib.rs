//! recipe: a declarative YAML recipe in, an LLM fine-tuning run out.
//!
//! The pipeline, one module each: `recipe` (YAML text -> layered, located tree -> checked
//! Config), `config` (the typed recipe, its JSON Schema and cross-field rules). The compiler
//! modules never touch libtorch; the executor (`exec`, behind the default `exec` feature) does.

pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod launch;
pub mod plan;
pub mod recipe;
pub mod track;

#[cfg(feature = "exec")]
pub mod exec;
#[cfg(feature = "exec")]
pub mod model;
