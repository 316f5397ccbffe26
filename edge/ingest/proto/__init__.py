"""Generated Sparkplug B protobuf module (see sparkplug_b.proto for licence and regeneration)."""
