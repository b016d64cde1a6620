"""kubetune: Kubernetes-native LLM fine-tuning (XTuner's toolkit as one runtime, plus an operator)."""

__version__ = "0.1.0"
