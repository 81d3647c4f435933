"""Hospital side: DICOM ingestion, preprocessing, site tables and the `m3fm-site` command."""
