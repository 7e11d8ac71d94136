//! Shared test support: the moto server launcher the end-to-end tests start, the
//! fault-injecting proxy put in front of it, and the rig that plays a plan out
//! against the simulated AWS.

pub mod fault_proxy;
pub mod moto;
pub mod rig;
