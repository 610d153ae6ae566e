"""The data modules and what they share: IDX files, batches cut on the device, augmentation, digits on canvases,
synthetic data for tests."""
