"""DICOM in and out: the only package that imports highdicom."""
