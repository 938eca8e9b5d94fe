"""No-learning baseline for brain FLAIR: brain-extracted intensity, median-filtered, thresholded."""
