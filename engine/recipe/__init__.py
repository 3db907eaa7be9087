"""The recipe: one frozen, validated description of a compression setting.

    recipe    Recipe: JSON round trip, per-layer rules, describe()
    fields    each field declared once (type, choices, bounds, option, URL parameter), and the
              rules between fields, read from the tables of methods and formats
    presets   llama.cpp's quantization mixes (Q4_K_M, ...) as per-layer recipes
"""
