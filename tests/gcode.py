"""G-code files for the printer tests: layers with Z-hops, with or without slicer layer markers."""

from __future__ import annotations


def make_gcode(
    layers: int = 12, *, markers: str | None = "cura", hop: float = 0.4, moves: int = 2, height: float = 0.2
) -> bytes:
    """Each layer: (marker), Z up to the layer, ``moves`` extrusion moves of 20 mm at F600 with a Z-hop travel
    between them. OctoPrint's Virtual Printer takes a tenth of the move time: about 0.2 s a move."""
    out = ["; LayerWatch test job", "G28", "G90", "M83", "G1 Z5 F3000", "G1 X0 Y0 F6000"]
    for n in range(layers):
        z = round(height * (n + 1), 3)
        if markers == "cura":
            out.append(f";LAYER:{n}")
        elif markers == "prusa":
            out += [";LAYER_CHANGE", f";Z:{z}"]
        out.append(f"G1 Z{z} F600")
        for m in range(moves):
            x = 20 if m % 2 == 0 else 0
            out.append(f"G1 X{x} Y{n % 5} E1.0 F600")
            if hop:
                out.append(f"G1 Z{z + hop:.3f} F600")
                out.append(f"G1 Z{z} F600")
    out += ["G1 Z20 F600", "M84", "; end"]
    return ("\n".join(out) + "\n").encode()
