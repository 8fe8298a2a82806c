package httproute
