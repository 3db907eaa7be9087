"""How compressed layers are stored: bit packing (`pack`), Huffman coding (`huffman`), one
stored matrix or layer to and from its tensors (`codec`), and the export formats that write
and read whole models (`explorer`: this explorer's own folder format)."""
