//! Attention's input projections and the MLP's gate/up projections, either as separate linears
//! (the Llama family) or fused into one linear as Phi-3 stores them: `self_attn.qkv_proj` (rows
//! q, then k, then v) and `mlp.gate_up_proj` (rows gate, then up). A fused projection is one
//! `Linear` end to end: LoRA adapts it as one module (peft's `qkv_proj` / `gate_up_proj`
//! targets), 4-bit quantization packs the fused weight as bitsandbytes does, and merges and full
//! fine-tuning save it under its fused name. The outputs are split only after the matmul.

use super::linear::Linear;
use tch::Tensor;

/// q, k and v projections.
pub enum QkvProj {
    Split {
        q_proj: Linear,
        k_proj: Linear,
        v_proj: Linear,
    },
    /// Phi-3's `qkv_proj`: [q width + 2 × kv width, hidden].
    Fused {
        qkv_proj: Linear,
    },
}

impl QkvProj {
    /// q, k and v [.., width] of input `h`; `q_width` is heads × head_dim (the rest of a fused
    /// output is k and v, equally wide). The fused parts are views, not contiguous.
    pub fn forward(&self, h: &Tensor, train: bool, adapters: bool, q_width: i64) -> (Tensor, Tensor, Tensor) {
        match self {
            QkvProj::Split { q_proj, k_proj, v_proj } => (
                q_proj.forward(h, train, adapters),
                k_proj.forward(h, train, adapters),
                v_proj.forward(h, train, adapters),
            ),
            QkvProj::Fused { qkv_proj } => {
                let qkv = qkv_proj.forward(h, train, adapters);
                let kv_width = (qkv.size()[qkv.dim() - 1] - q_width) / 2;
                (
                    qkv.narrow(-1, 0, q_width),
                    qkv.narrow(-1, q_width, kv_width),
                    qkv.narrow(-1, q_width + kv_width, kv_width),
                )
            }
        }
    }

    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            QkvProj::Split { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj],
            QkvProj::Fused { qkv_proj } => vec![qkv_proj],
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            QkvProj::Split { q_proj, k_proj, v_proj } => vec![q_proj, k_proj, v_proj],
            QkvProj::Fused { qkv_proj } => vec![qkv_proj],
        }
    }
}

/// The gated MLP's gate and up projections.
pub enum GateUpProj {
    Split {
        gate_proj: Linear,
        up_proj: Linear,
    },
    /// Phi-3's `gate_up_proj`: [2 × intermediate, hidden].
    Fused {
        gate_up_proj: Linear,
    },
}

impl GateUpProj {
    /// silu(gate) · up, the down projection's input.
    pub fn activated(&self, h: &Tensor, train: bool, adapters: bool) -> Tensor {
        let (gate, up) = self.forward(h, train, adapters);
        gate.silu() * up
    }

    /// gate and up of input `h` (fused: transformers' Phi3MLP `gate, up = chunk(2)`).
    pub fn forward(&self, h: &Tensor, train: bool, adapters: bool) -> (Tensor, Tensor) {
        match self {
            GateUpProj::Split { gate_proj, up_proj } => {
                (gate_proj.forward(h, train, adapters), up_proj.forward(h, train, adapters))
            }
            GateUpProj::Fused { gate_up_proj } => {
                let both = gate_up_proj.forward(h, train, adapters);
                let half = both.size()[both.dim() - 1] / 2;
                (both.narrow(-1, 0, half), both.narrow(-1, half, half))
            }
        }
    }

    pub fn linears(&self) -> Vec<&Linear> {
        match self {
            GateUpProj::Split { gate_proj, up_proj } => vec![gate_proj, up_proj],
            GateUpProj::Fused { gate_up_proj } => vec![gate_up_proj],
        }
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        match self {
            GateUpProj::Split { gate_proj, up_proj } => vec![gate_proj, up_proj],
            GateUpProj::Fused { gate_up_proj } => vec![gate_up_proj],
        }
    }
}
