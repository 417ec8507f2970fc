/* Demo program: runs the model on int8 inputs and prints each output vector and its argmax.
 *
 * Hosted build: reads samples of EW_INPUT_SIZE bytes from stdin until EOF.
 * -DEW_AUDIO_FRONTEND (a bundle that declares an audio front end): reads clips of EW_FE_CLIP_SAMPLES
 * 16-bit PCM samples instead (a short last clip is padded with silence) (embedded: ew_pcm from inputs.h), and runs the generated front end before
 * the model.
 * -DEW_EMBEDDED_INPUTS: runs the samples compiled in from inputs.h (for boards without stdin; output
 * goes through semihosting's printf).
 */
#include <stdio.h>
#include <string.h>
#include "model.h"
#include "ew_kernels.h"
#ifdef EW_AUDIO_FRONTEND
#include "ew_frontend.h"
#endif

#ifdef EW_EMBEDDED_INPUTS
#include "inputs.h"
#endif

static void print_output(const int8_t *out)
{
    int i;
    for (i = 0; i < EW_OUTPUT_SIZE; i++)
        printf(i ? " %d" : "%d", (int)out[i]);
    printf(" | %d\n", ew_argmax(out, EW_OUTPUT_SIZE));
}

int main(void)
{
    static int8_t in[EW_INPUT_SIZE];
    static int8_t out[EW_OUTPUT_SIZE];
#if defined(EW_EMBEDDED_INPUTS) && defined(EW_AUDIO_FRONTEND)
    int s;
    for (s = 0; s < EW_NUM_INPUTS; s++) {  /* PCM clips: the front end, then the model */
        ew_frontend_features(ew_pcm[s], in);
        ew_model_invoke(in, out);
        print_output(out);
    }
#elif defined(EW_EMBEDDED_INPUTS)
    int s;
    for (s = 0; s < EW_NUM_INPUTS; s++) {
        ew_model_invoke(ew_inputs[s], out);
        print_output(out);
    }
    (void)in;
#elif defined(EW_AUDIO_FRONTEND)
    static int16_t pcm[EW_FE_CLIP_SAMPLES];
    size_t n;
    while ((n = fread(pcm, sizeof(int16_t), EW_FE_CLIP_SAMPLES, stdin)) > 0) {
        if (n < EW_FE_CLIP_SAMPLES)  /* a recording shorter than a clip: padded with silence */
            memset(pcm + n, 0, (EW_FE_CLIP_SAMPLES - n) * sizeof(int16_t));
        ew_frontend_features(pcm, in);
        ew_model_invoke(in, out);
        print_output(out);
        if (n < EW_FE_CLIP_SAMPLES)
            break;
    }
#else
    while (fread(in, 1, EW_INPUT_SIZE, stdin) == EW_INPUT_SIZE) {
        ew_model_invoke(in, out);
        print_output(out);
    }
#endif
    return 0;
}
