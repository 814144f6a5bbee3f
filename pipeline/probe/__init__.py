"""Frozen evaluation of an encoder: k-NN, linear and attentive probes on cached features (`vssl probe`)."""
