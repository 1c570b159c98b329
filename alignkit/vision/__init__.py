"""Vision-language models: images in the data, processors, pixel inputs next to the token batch."""
