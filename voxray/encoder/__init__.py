"""The wav2vec2-family encoder core shared by the ASR and embedding runners, with its chunk and
batch planners and the options both runners share."""
