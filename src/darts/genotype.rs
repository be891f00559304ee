//! Genotypes: discretising alphas as the reference does, printing and parsing the
//! reference's text form.
