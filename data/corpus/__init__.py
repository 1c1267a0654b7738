"""forgeline.corpus: the shipped public-domain training text (shakespeare.txt); see README.md here."""
