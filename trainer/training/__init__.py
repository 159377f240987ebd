"""Training: ``corestream-train train``, its options, and one trainer per architecture behind one interface."""
