//! SVG charts rendered on the server.
