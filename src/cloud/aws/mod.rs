//! The AWS SDK adapter.
