"""Models and the text they read.

    loading   aliases (smollm2 from its shipped GGUF file), local folders and hub ids, loaded once
    gguf_source  any GGUF file as a source model: dequantized once to a folder cached by its content
    hub       what loading a hub model would download, asked before downloading
    building  one model built at a time, quietly for the thread that builds it
    data      the public text and labels shipped with gensim (nothing copied here)
    inputs    how text goes into a model (encoder-decoders: a source and a target)
    calibrate the calibration statistics: X^T X of every layer's inputs on real text
"""
