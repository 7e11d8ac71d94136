//! Shared test support: the moto server launcher the end-to-end tests start, and the
//! rig that plays a plan out against the simulated AWS.

pub mod moto;
pub mod rig;
