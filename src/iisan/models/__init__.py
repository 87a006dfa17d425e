"""Models: the IISAN side network, baseline item towers, and the SASRec user encoder."""
