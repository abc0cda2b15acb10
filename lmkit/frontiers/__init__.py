"""Frontier topics (Part VI of the book), one module per question.

in-context learning (chapter 24), privacy and fairness (27), generative models beyond language
models: a VAE and a GAN (28), interpretability (29).
"""
