//! The model side of the executor (tch): safetensors weights, the Llama-family network with its
//! LoRA-capable linear layers, rotary embeddings, and sampling.

pub mod adapter;
pub mod bnb;
pub mod bottleneck;
pub mod embed_dora;
pub mod fused;
pub mod gemma;
pub mod generate;
pub mod int8;
pub mod linear;
pub mod llama;
pub mod moe;
pub mod nf4;
pub mod olmo2;
pub mod prefix;
pub mod qat;
pub mod rope;
pub mod serving;
pub mod weights;
