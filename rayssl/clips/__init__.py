"""The clip pipeline: sampling, transforms, the Ray Data pipeline and its scheduling, optical flow
and the statistics label maths the pretexts use."""
