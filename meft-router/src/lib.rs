//! Key-Experts router: MoE-like top-K neuron retrieval on the host.
