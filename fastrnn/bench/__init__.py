"""The benchmark engine of `python -m fastrnn bench` (`engine`) and the loader of SpeechBrain's
recurrent module, the Li-GRU peer (`speechbrain`). Not imported by `import fastrnn`."""
