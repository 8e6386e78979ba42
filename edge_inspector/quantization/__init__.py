"""HQS quantization (RAAD): per-layer INT8/INT4 scoring, exact bit allocation, fine-tuning, QDQ export."""
