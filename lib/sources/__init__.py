"""Stage 1, decode: discovery, archives, content hashes, ffmpeg, and the source kinds."""
