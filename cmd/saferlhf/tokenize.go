package main

func runTokenize(args []string) error { return errNotYet("tokenize") }
