"""How compressed layers are stored: bit packing (`pack`), Huffman coding (`huffman`), one
stored matrix or layer to and from its tensors (`codec`), and the export formats that write
and read whole models (`explorer_format`: this explorer's own folder format; `gguf_file`: the GGUF file
llama.cpp runs; `ct_file`: the compressed-tensors folder transformers and vLLM load; `detect`:
which of the three lies at a path, and reading any of them back)."""
