"""The probe stage: one linear probe per layer, one module per solver."""
