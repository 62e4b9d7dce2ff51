"""The test-time corruptions (kuda_mmsa.data.corruption), named where the command line's
parsers can read them without importing torch."""
KINDS = ("missing", "noise", "swap")
