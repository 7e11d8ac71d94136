//! Shared test support, each piece in one place: the rig that plays a plan out
//! against the simulated AWS, the plan texts it runs, the binary's runners, test data,
//! the moto server launcher the end-to-end tests start and the fault-injecting proxy
//! put in front of it.

pub mod bin;
pub mod bytes;
pub mod fault_proxy;
pub mod moto;
pub mod plans;
pub mod rig;
