"""The stream pipeline in the order of the flow: decode, batch, stages, dead letters, commit positions, processor."""
