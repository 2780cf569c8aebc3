"""Plain data types and readers, without torch: the engine's surface (errors, settings, the
session protocol), safety levels, the turn trace, feature sets, paths and data sets."""
