"""The gateway's cluster mode: sessions as TutorSession resources, engines as pods."""
