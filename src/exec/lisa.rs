//! LISA (layerwise importance sampled AdamW, Axolotl's `lisa_n_layers` / `lisa_step_interval`):
//! a full fine-tune in which only `n_layers` of the decoder layers train at a time, as Axolotl's
//! `LISACallback` does. At the start of optimizer step `global_step` (0-based, the steps already
//! taken), when `global_step % step_interval == 0` **or `global_step == 1`**, every parameter of
//! every decoder layer is frozen and `n_layers` distinct layers, drawn uniformly without
//! replacement, are unfrozen. Axolotl's condition draws at step 0 and again at step 1, then at
//! every multiple of the interval; recipe keeps that quirk. The embeddings, the final norm and the
//! head train throughout.
//!
//! A frozen layer's parameters stop requiring gradients (the backward pass computes none for
//! them) and their gradients are dropped (`grad = None`, as transformers' `zero_grad` leaves
//! them), so the optimizer skips them as torch's AdamW and bitsandbytes' do: no update, no weight
//! decay, their moments and their own step count kept until the layer is drawn again
//! (`AdamW::with_per_parameter_steps`); clipping's norm covers the parameters with gradients.
//!
//! The draw: Axolotl calls `np.random.choice(range(total), n, replace=False)` on numpy's global
//! state, whose position at that point depends on everything else that drew from it. recipe draws
//! from its own generator, seeded from `seed` and the switch step (ChaCha8, a partial
//! Fisher-Yates shuffle): the same distribution (every ordered choice of `n` distinct layers
//! equally likely), deterministic, the same on every rank, and recomputable on resume; the active
//! layers are also stored in checkpoints (`trainer_state.json`) and logged at each switch.

use rand::RngExt;
use rand::SeedableRng;
use tch::Tensor;

/// The schedule: when layers switch and which are drawn.
#[derive(Debug, Clone)]
pub struct LisaSchedule {
    pub n_layers: usize,
    pub step_interval: u64,
    pub total_layers: usize,
    seed: u64,
    /// Test-only: the layer sets to use at the successive switches instead of drawing (from a
    /// reference run of Axolotl's callback).
    injected: Option<Vec<Vec<usize>>>,
}

impl LisaSchedule {
    pub fn new(n_layers: usize, step_interval: u64, total_layers: usize, seed: u64) -> LisaSchedule {
        LisaSchedule { n_layers, step_interval: step_interval.max(1), total_layers, seed, injected: None }
    }

    /// A schedule whose `k`-th switch activates `sets[k]` (for parity tests against sets drawn by
    /// Axolotl's callback with numpy; not reachable from a recipe).
    pub fn with_layer_sets(mut self, sets: Vec<Vec<usize>>) -> LisaSchedule {
        self.injected = Some(sets);
        self
    }

    /// Whether the layers switch at the start of step `step` (0-based): Axolotl's
    /// `global_step % step_interval == 0 or global_step == 1`.
    pub fn switches_at(&self, step: u64) -> bool {
        step.is_multiple_of(self.step_interval) || step == 1
    }

    /// The number of switches at steps `0..=step`.
    fn switches_up_to(&self, step: u64) -> usize {
        let multiples = (step / self.step_interval + 1) as usize;
        // Step 1 is a switch of its own unless it is a multiple of the interval (interval 1).
        multiples + usize::from(step >= 1 && self.step_interval > 1)
    }

    /// The layers drawn at the switch at `step` (which must be a switch step), in draw order.
    pub fn draw(&self, step: u64) -> Vec<usize> {
        if let Some(sets) = &self.injected {
            let k = self.switches_up_to(step) - 1;
            return sets[k % sets.len()].clone();
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed ^ step.wrapping_add(1).wrapping_mul(0x4C15A));
        let mut layers: Vec<usize> = (0..self.total_layers).collect();
        let n = self.n_layers.min(self.total_layers);
        for i in 0..n {
            let j = rng.random_range(i..layers.len());
            layers.swap(i, j);
        }
        layers.truncate(n);
        layers
    }

    /// The layers active during step `step`: those drawn at the last switch at or before it.
    pub fn active_at(&self, step: u64) -> Vec<usize> {
        let last = (0..=step).rev().find(|&s| self.switches_at(s)).unwrap_or(0);
        self.draw(last)
    }
}

/// The parameters of each decoder layer of `model` (`model.layers.{i}.*`), by layer.
pub fn layer_params(model: &crate::model::llama::CausalLm) -> Vec<Vec<Tensor>> {
    let mut out: Vec<Vec<Tensor>> = (0..model.layers.len()).map(|_| Vec::new()).collect();
    for p in model.base_params() {
        let layer = p.name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()?.parse::<usize>().ok());
        if let Some(i) = layer.filter(|&i| i < out.len()) {
            out[i].push(p.tensor);
        }
    }
    out
}

/// The decoder layers' parameters, by layer, and the state of the switching.
pub struct Lisa {
    pub schedule: LisaSchedule,
    layers: Vec<Vec<Tensor>>,
    /// The layers training now (empty before the first switch).
    pub active: Vec<usize>,
}

impl Lisa {
    /// `layers[i]`: the parameters of decoder layer `i` (all of them trainable when built).
    pub fn new(schedule: LisaSchedule, layers: Vec<Vec<Tensor>>) -> Lisa {
        Lisa { schedule, layers, active: Vec::new() }
    }

    /// At the start of step `step`: switches the layers when the schedule says so; on the first
    /// step of a run (or of a resumed run) it sets the layers active at `step` (`resumed`: those a
    /// checkpoint recorded). Returns the layers activated when they changed, for the log.
    pub fn begin_step(
        &mut self,
        step: u64,
        first: bool,
        resumed: Option<&[usize]>,
    ) -> Result<Option<Vec<usize>>, String> {
        let chosen = if self.schedule.switches_at(step) {
            self.schedule.draw(step)
        } else if first {
            match resumed {
                Some(r) => {
                    let total = self.layers.len();
                    let mut distinct = r.to_vec();
                    distinct.sort_unstable();
                    distinct.dedup();
                    if distinct.len() != r.len() || r.len() != self.schedule.n_layers || r.iter().any(|&i| i >= total) {
                        return Err(format!(
                            "the checkpoint's trainer_state.json records LISA layers {r:?}, not {} distinct decoder \
                             layers of {total} (lisa_n_layers): it was not written by this recipe's run",
                            self.schedule.n_layers
                        ));
                    }
                    r.to_vec()
                }
                None => self.schedule.active_at(step),
            }
        } else {
            return Ok(None);
        };
        self.activate(&chosen)?;
        Ok(Some(chosen))
    }

    /// Freezes every decoder layer (dropping its gradients) and unfreezes `chosen`.
    pub fn activate(&mut self, chosen: &[usize]) -> Result<(), String> {
        for (i, params) in self.layers.iter().enumerate() {
            let on = chosen.contains(&i);
            for p in params {
                let _ = p.set_requires_grad(on);
                if !on {
                    super::torch_ops::set_grad(p, None)?;
                }
            }
        }
        self.active = chosen.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_s_layers_must_be_n_distinct_layers_of_the_model() {
        let lisa = || Lisa::new(LisaSchedule::new(2, 3, 4, 7), (0..4).map(|_| Vec::new()).collect());
        // Step 2 is no switch: a resumed run takes the checkpoint's layers.
        for bad in [&[0usize, 9][..], &[1, 1], &[2]] {
            let e = lisa().begin_step(2, true, Some(bad)).unwrap_err();
            assert!(e.contains("trainer_state.json") && e.contains("lisa_n_layers"), "{e}");
        }
        assert_eq!(lisa().begin_step(2, true, Some(&[3, 1])).unwrap(), Some(vec![3, 1]));
    }

    #[test]
    fn switches_at_zero_one_and_every_interval() {
        let s = LisaSchedule::new(2, 3, 6, 7);
        let at: Vec<u64> = (0..10).filter(|&k| s.switches_at(k)).collect();
        assert_eq!(at, vec![0, 1, 3, 6, 9]);
        let every = LisaSchedule::new(2, 1, 6, 7);
        assert!((0..5).all(|k| every.switches_at(k)));
        assert_eq!(s.switches_up_to(0), 1);
        assert_eq!(s.switches_up_to(1), 2);
        assert_eq!(s.switches_up_to(2), 2);
        assert_eq!(s.switches_up_to(3), 3);
        assert_eq!(every.switches_up_to(3), 4);
    }

    #[test]
    fn draws_are_distinct_sized_and_deterministic_by_seed() {
        let s = LisaSchedule::new(4, 20, 32, 42);
        for step in [0u64, 1, 20, 40] {
            let d = s.draw(step);
            assert_eq!(d.len(), 4);
            let mut u = d.clone();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), 4, "{d:?}");
            assert!(d.iter().all(|&l| l < 32));
            assert_eq!(d, LisaSchedule::new(4, 20, 32, 42).draw(step));
        }
        assert_ne!(s.draw(0), s.draw(1));
        assert_ne!(s.draw(0), LisaSchedule::new(4, 20, 32, 43).draw(0));
        assert_eq!(s.active_at(25), s.draw(20));
        assert_eq!(s.active_at(19), s.draw(1));
    }

    #[test]
    fn the_draw_is_uniform_over_layers() {
        // Every layer is drawn about n/total of the time (2,000 draws of 2 of 5: 800 each).
        let s = LisaSchedule::new(2, 1, 5, 3);
        let mut counts = [0usize; 5];
        for step in 0..2000 {
            for l in s.draw(step) {
                counts[l] += 1;
            }
        }
        assert!(counts.iter().all(|&c| (700..900).contains(&c)), "{counts:?}");
    }

    #[test]
    fn injected_sets_follow_the_switches() {
        let s = LisaSchedule::new(1, 2, 3, 0).with_layer_sets(vec![vec![0], vec![2], vec![1], vec![0]]);
        let got: Vec<Vec<usize>> = (0..6).map(|k| s.active_at(k)).collect();
        assert_eq!(got, vec![vec![0], vec![2], vec![1], vec![1], vec![0], vec![0]]);
    }
}
