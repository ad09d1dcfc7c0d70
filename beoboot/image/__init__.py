"""From a stage's file list to a compressed image, its cache and the build manifest."""
