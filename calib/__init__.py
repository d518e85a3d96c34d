"""qfsdk.calib: synthetic calibration data and range observers."""
