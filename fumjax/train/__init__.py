"""Training: corpus, phases, clustering, structural plasticity, checkpoints (layer 6, above dynamics)."""
