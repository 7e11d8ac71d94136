//! The simulated AWS.
