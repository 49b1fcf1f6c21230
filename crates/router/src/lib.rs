//! Complexity routing for OptiRoute: decide per request whether the strong (expensive) model is needed.
//!
//! - [`Scorer`] implementations: [`LearnedScorer`] (shipped weights, logistic regression over hashed
//!   n-grams and cheap signals), [`HeuristicScorer`] (hand-written rules), [`LengthRule`] (legacy rule).
//! - [`metrics`]: PGR / APGR / CPT on the quality-vs-strong-share curve; [`eval`]: cross-validation.
//! - [`ThresholdCalibrator`]: keeps a target strong share on live traffic.
//! - [`cascade`]: cheap-first answering with checks that decide escalation; [`verifier`]: the risk that a
//!   cheap answer that passed them is wrong anyway.
//! - [`traffic`]: features the gateway logs for `auto` requests, exported rows, and labels for retraining.
//! - [`cli`]: the `optiroute router {eval,score,train,verify,train-verifier,export}` commands.
//!
//! Nothing here does I/O on the scoring path, and nothing needs an async runtime.

pub mod calibrate;
pub mod cascade;
pub mod cli;
pub mod conversation;
pub mod data;
pub mod eval;
pub mod features;
pub mod learned;
pub mod metrics;
pub mod plot;
pub mod scorer;
pub mod traffic;
pub mod trees;
pub mod verifier;

pub use calibrate::ThresholdCalibrator;
pub use cli::{RouterCommand, run};
pub use conversation::{Conversation, Message, Role, TokenCounts};
pub use learned::{LearnedScorer, Target, TrainConfig, WeightsError};
pub use scorer::{HeuristicScorer, LengthRule, RandomScorer, Scorer};
