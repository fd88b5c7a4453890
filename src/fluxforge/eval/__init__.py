"""Evaluation: perplexity, multiple-choice scoring, significance tests and the HTML report."""
