"""pathor1 corpora: what a sample is, how it is asked, how its answer is graded."""
