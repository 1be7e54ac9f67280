//! slimlm
